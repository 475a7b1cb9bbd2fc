"""Built-in supplier plugins, registered by module name like any other plugin."""

BUILTIN_PLUGINS = ("plugins.sandbox", "plugins.juhe", "plugins.reloadly")
