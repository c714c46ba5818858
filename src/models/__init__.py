"""Networks as plain torch modules: no Lightning here (src/modules/ trains them)."""
