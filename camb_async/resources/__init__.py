"""Resources: ``client.dub``, ``client.tts``, ``client.translation``, ``client.transcription``.

``_base`` holds ``TaskResource`` (paths, status, results in batches, create) and the routes;
one module per kind adds its ``create`` (and TTS its audio calls); ``_args`` checks the
arguments and builds the request bodies; ``_upload`` handles file arguments of multipart calls.
This package re-exports nothing: ``camb_async`` is the public path.
"""
