"""The gRPC API: `.proto` sources and the Python stubs generated from them (`make proto`)."""
