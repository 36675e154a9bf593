namespace DetoxSharp;

/// <summary>
/// A problem the user can fix: a missing or malformed file, a bad flag value, an inconsistent checkpoint.
/// The message is one line naming the file (and line) or flag and what is wrong; the CLI prints it and exits with 2.
/// </summary>
public sealed class InvalidInputException(string message, Exception? inner = null) : Exception(message, inner);
