"""The replaced design (Omi's asyncio listen core), re-created as a benchmark peer (README.md)."""
