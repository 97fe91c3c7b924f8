"""The GrowCLIP experiment (issue 11): arms on the same growing data stream at equal training FLOPs, each an
ordinary run folder, and a report written from the run folders alone. `python -m growth.experiment`; see
growth/experiment/README.md."""
