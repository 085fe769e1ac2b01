"""The reconcile engine: watch-fed caches, one retrying work queue per kind of work, and the pause that keeps
a paused (peering) or not-yet-synced replica silent. Controllers plug their passes into it."""
