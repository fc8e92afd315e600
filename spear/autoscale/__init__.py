"""Node autoscaling: a pure policy core, the providers that start and stop
Spearlets, and the controller that joins them to a running SMS.

This package may import ``spear.protocol``, ``errors``, ``config``, ``ids``,
``client``, ``service`` and ``metrics`` (the controller's /metrics server);
never ``sms``, ``spearlet``, ``gateway`` or ``cli`` internals (it talks to
the SMS only through the public client). Cloud SDKs
(kubernetes, libcloud, docker) are imported lazily by the provider that needs
them.
"""
