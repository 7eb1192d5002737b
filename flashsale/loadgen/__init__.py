"""Load generator: plays simulated customers through the pipeline over HTTP and Socket.IO."""
