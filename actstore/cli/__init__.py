"""The command line: click commands that parse flags into records, call the library and print.

No rules live here: everything a command does is one call a Python user can make too.

* :mod:`.main`: the ``actstore`` group, error mapping (a user error prints ``Error: ...``, exit 1);
* :mod:`.options`: shared options and parameter types, ``take_record`` (flags -> frozen records by field name);
* :mod:`.models`: ``actstore models`` (the embedded model, conversions);
* :mod:`.capture`: ``actstore capture``;
* :mod:`.stats`: ``actstore stats``, ``info``, ``verify``;
* :mod:`.enr`: ``actstore extract`` and its alias ``actstore enr``;
* :mod:`.vectors`: ``actstore vector`` (GGUF control vectors);
* :mod:`.steer`: ``actstore steer``;
* :mod:`.project`: ``actstore project`` (vectors as monitors);
* :mod:`.evaluate`: ``actstore eval``;
* :mod:`.judge`: ``actstore judge validate`` (a judge's AUROC on labelled responses);
* :mod:`.serve`: ``actstore serve`` and ``serve check``.
"""
