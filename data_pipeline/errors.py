"""The one exception type of the data pipeline: bad input that must stop a run early, with the file it came
from (D13)."""


class DataError(ValueError):
    """A missing, empty or corrupt shard, a mismatched tokenizer, an unusable manifest or setting."""
