"""A well-behaved plugin: two node types, one manifest shipped as a YAML file, one a dict."""
