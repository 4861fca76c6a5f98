"""Errors edgeai raises for user mistakes; each message says what is wrong and what to do."""


class EdgeAIError(Exception):
    """Base of every error caused by input the user can fix. The CLI prints it on one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwind like Ctrl-C (staging folders are removed on the way out); the CLI exits 143."""


class ModelLoadError(EdgeAIError):
    """The model file or factory could not be loaded."""


class InputSpecError(EdgeAIError):
    """An --input spec, example-input file or feed does not match what the model needs."""


class ExportError(EdgeAIError):
    """No exporter could turn the model into the requested format."""


class VerificationError(EdgeAIError):
    """The exported artifact does not compute what the PyTorch reference computes."""


class RuntimeLoadError(EdgeAIError):
    """The artifact could not be loaded or run by its runtime."""


class DataError(EdgeAIError):
    """Calibration, evaluation or training data is missing, empty, malformed or not finite."""


class OutputError(EdgeAIError):
    """The output location cannot be written."""


class ConfigError(EdgeAIError):
    """A step, exporter or recipe option is out of range or contradicts another."""


class UnknownNameError(EdgeAIError, KeyError):
    """A registry lookup failed; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MissingDependencyError(EdgeAIError):
    """An optional dependency is not installed; the message names the install command."""
