"""jobgate: GitLab CI/CD job token semantics in front of any HTTP service."""

__version__ = "0.1.0"
