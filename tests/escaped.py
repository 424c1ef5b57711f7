"""Guest source that has escaped to the os module's globals (its real sys, its real builtins),
as every isolation test assumes a guest can. Put in front of a guest's source (it is indented as
the sources that the ``make_root`` and ``runner`` fixtures dedent): what the runtime and the
daemon must withstand."""

ESCAPED = """
        def _os_globals():
            for klass in object.__subclasses__():
                for member in vars(klass).values():
                    found = getattr(member, "__globals__", None)
                    if isinstance(found, dict) and found.get("__name__") == "os":
                        return found
"""
