"""The database: where PostgreSQL is (embedded or configured), schema migrations, and the vector
store split by the tables it owns behind the `VectorStore` facade."""
