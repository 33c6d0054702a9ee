"""HTTP route blueprints, one per surface."""
