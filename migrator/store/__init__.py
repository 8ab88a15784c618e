"""The state store: SQLAlchemy Core tables and repository functions that return model objects."""
