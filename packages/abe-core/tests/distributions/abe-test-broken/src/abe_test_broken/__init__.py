"""A provider whose client library is not installed: importing it fails."""

import abe_client_library_that_is_not_installed  # type: ignore[import-not-found]  # noqa: F401


class BrokenBackend:
    """Never reached."""
