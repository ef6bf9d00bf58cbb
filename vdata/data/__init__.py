"""The data library: source datasets read with uproot, remote sources, the catalog, recipes and
their plans (local materialization of a range), and synthetic ROOT files for tests and demos."""
