"""The canonical database's schema: ordered SQL migrations and the code that applies them."""

from canonical_db.migrate import apply_migrations, pending_migrations

__all__ = ["apply_migrations", "pending_migrations"]
