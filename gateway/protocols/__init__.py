"""Protocol adapters (git smart HTTP, the container registry) over the same decision."""
