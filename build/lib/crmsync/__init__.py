"""crmsync: keeps customers consistent between a canonical PostgreSQL database and CRM,
billing and support systems, through Debezium, Kafka and Faust."""

__all__: list[str] = []
