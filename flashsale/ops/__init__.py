"""Operations: running the pipeline's processes, rehearsing, reconciling, status."""
