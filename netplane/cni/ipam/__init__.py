"""The built-in IPAM: a pure allocator over a Store, a disk store, delegation to other IPAM plugins."""
