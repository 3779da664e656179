"""Training state as plain pytrees: one `NetState` per network, composed by each model family."""

from __future__ import annotations

from typing import Any

import flax.struct
import optax


@flax.struct.dataclass
class NetState:
    """One network's trainable state: parameters, batch-norm statistics and optimizer state."""

    params: Any
    batch_stats: Any
    opt_state: optax.OptState

    def variables(self, params=None) -> dict:
        """Flax variables for `apply`, optionally with other parameters (e.g. while tracing)."""
        return {"params": self.params if params is None else params,
                "batch_stats": self.batch_stats}


def create_net_state(variables: dict, tx: optax.GradientTransformation) -> NetState:
    """Builds a NetState from `module.init(...)` output."""
    params = variables["params"]
    return NetState(params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params))


def apply_gradients(net: NetState, grads, tx: optax.GradientTransformation) -> NetState:
    """One optimizer update; returns a new NetState (batch statistics untouched)."""
    updates, opt_state = tx.update(grads, net.opt_state, net.params)
    return net.replace(params=optax.apply_updates(net.params, updates), opt_state=opt_state)
