"""The error the data layer raises for anything the user can fix: one sentence, what to change."""


class DataError(ValueError):
    """Bad or missing data: an empty folder, an unknown or unprepared dataset, too few identities."""
