"""The networked deployment: the gRPC server and client processes, their wire format, credentials and limits."""
