"""The operations console (运营后台) at ``/console``: server-rendered pages for operators.

How a page is added:

- Write the page's handlers in a module of this package, list them in its
  ``route_handlers``, and add that list to ``PAGES`` in ``service/console/app.py``.
  Handlers answer ``page(request, "name.html", active="orders", **context)``
  (``service/console/render.py``); ``active`` highlights the navigation entry.
  Templates live in ``templates/``, extend ``base.html`` and fill ``{% block content %}``.
- Every handler is signed-in only. The role it needs goes in ``opt``:
  ``@post("/x", opt=needs(Role.OPERATOR))``; the default is ``Role.VIEWER`` (read).
  A viewer sees pages; operators act on orders; admins manage partners, routes and
  operators.
- Every ``<form method="post">`` carries ``{{ csrf_field() }}``; the check runs for every
  unsafe request before the handler does (``service/console/auth.py``), so a handler
  never sees a forged post. A JavaScript ``fetch`` sends the token as ``X-CSRF-Token``
  (``document.body.dataset.csrf``).
- The acting operator is ``operator(request)``; core calls that record who acted get
  ``operator(request).name``. Services (database, stores, runtime) are
  ``services(request)``.
- A refusal the operator should read (bad input, a conflict) is ``raise
  ConsoleError("...")``: the page is shown again with the message, status 400.
"""

from __future__ import annotations
