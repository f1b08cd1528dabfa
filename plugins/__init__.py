"""Built-in pipeline plugins that are not destinations (dedup, enrichment, IP
anonymisation, PII scrubbing, rate limits). They implement ``eventrouter_process_batch``
and register through the ``eventrouter`` entry-point group like any third-party plugin."""
