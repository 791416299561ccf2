"""Transport: servicers, proto<->domain converters, error mapping, interceptors, server."""
