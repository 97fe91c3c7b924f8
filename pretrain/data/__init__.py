"""Data side of GrowCLIP: raw sources -> webdataset shards -> tokenizer -> resumable training batches.

Imports nothing from the model or trainer; see README.md in this folder.
"""
