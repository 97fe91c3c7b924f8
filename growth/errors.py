"""The one error type of growth: every bad request (missing or corrupt checkpoint, shrinking move, target invalid
for the layout, existing output) raises it with a message that names the culprit, before anything is written."""


class GrowthError(ValueError):
    pass
