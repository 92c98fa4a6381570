"""The wire: message layout, control-plane bodies, the transport and request splitting."""
