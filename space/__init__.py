"""The Gradio Space, one module per UI mode as FastChat lays out its ``serve/``: ``arena``, ``chat``,
``leaderboard`` and the typed ``api``, each built from the shared core (``assistant/``); ``common`` holds
the settings controls, the error the user sees, and the ZeroGPU decorator. ``app.py`` assembles them."""
