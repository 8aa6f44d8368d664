"""The old home of the memory backend (`service.memory`); it lives in `memory` now."""
