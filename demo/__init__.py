"""Built-in demo data: synthetic H&E-like tiles that any fresh machine can generate."""
