"""Where the program runs: the backend (platform), the processes of a job and their heartbeats
(distributed), signals that stop a run (preempt), and the process's allocator (heap).

Knows no model and no config file: it reads flags and the environment, and reports bad ones
as a ConfigError (one line, exit 2).
"""
