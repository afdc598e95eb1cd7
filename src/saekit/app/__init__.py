"""The application layer: the command line, the run configuration, the run folder
pipeline, the sweep, and the one recipe that builds, trains, fits and saves an SAE."""
