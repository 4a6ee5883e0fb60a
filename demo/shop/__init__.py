"""The demo shop: customers, products and orders, all tracked by audit_stream."""
