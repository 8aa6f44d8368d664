"""An entry point that is not a backend: it can publish but not consume or be configured."""


class NotABackend:
    """Lacks consume() and from_env()."""

    async def publish(self, key: str, payload: dict[str, object]) -> None:
        """Does nothing."""
