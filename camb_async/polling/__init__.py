"""Polling: when to ask about a task again, and the bulk calls that ask about many.

Read in this order (each module imports only the ones above it):

* ``_policy``     ``PollPolicy``, the per-kind defaults, the deadline helpers
* ``_fit``, ``_hints``, ``_stats``, ``_schedule``  what is learned from completions
  (``CompletionStats``) and the schedule math built on it
* ``_adaptive``   ``AdaptivePollPolicy``: a ``PollPolicy`` that polls where completion is likely
* ``_scheduler``  the heap of due tasks and the fixed pool of workers (``_Poller``)
* ``_stream``     ``iter_statuses`` / ``gather_statuses`` / ``StatusIterator``
* ``_results``    ``gather_results``: poll, then batch-fetch every success's result

This package re-exports nothing: ``camb_async`` is the public path; importing the modules
directly keeps the package itself out of the import graph.
"""
