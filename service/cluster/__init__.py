"""Cluster mode (BUS_URL set): several nodes on NATS JetStream.

bus.py (the connection, the events stream, the lease buckets, the message format),
leases.py (one writer per partition of the devices), node.py (a node: publishing pushes,
writing the partitions it holds). See docs/cluster.md.
"""
