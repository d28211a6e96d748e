"""Storage: atomic writes and locks, remote URIs, fingerprints of code and weights, a population's lineage."""
