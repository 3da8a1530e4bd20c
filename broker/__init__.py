"""RabbitMQ topology, connections, confirms and provisioning (exchange issue)."""
