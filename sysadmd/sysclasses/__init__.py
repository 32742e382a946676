"""The ``sysadm/*`` classes upstream clients call: one module per class.

Each module has:

* ``available(config) -> bool``: whether this host has what the class needs (a tool, a
  file, an init system).  :mod:`sysadmd.assembly` routes a class only when it is
  available, so a class without its backend is absent from ``rpc/query`` and answers
  404 like any unknown name, rather than being listed and answering errors.
* ``route(api, …)``: registers ``sysadm/<class>`` on the :class:`~sysadmd.api.Api`,
  with whatever collaborators the class needs as further arguments.

:mod:`sysadmd.sysclasses.common` holds what every class shares: the action table
(dispatch on ``args["action"]``, 400 naming the known actions, full access for
mutating actions, the ``{"<action>": result}`` reply), argument readers with bounds and
the argv runner whose failures become error replies with the tool's message.
"""
