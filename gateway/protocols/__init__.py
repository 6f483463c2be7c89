"""Protocol adapters over the pipeline: the registry's token endpoint, forward-auth."""
