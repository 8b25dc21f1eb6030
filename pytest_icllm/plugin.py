"""The pytest plugin's entry point (registered through `pytest11`).

Fixtures and options arrive here as the plugin grows; the emulator itself is usable today through
`emulator.server.ThreadedEmulator` and `emulator.client`.
"""
