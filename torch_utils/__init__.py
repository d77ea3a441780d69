"""Torch infrastructure: custom ops, misc helpers, persistence, training statistics, checkpoint IO."""
