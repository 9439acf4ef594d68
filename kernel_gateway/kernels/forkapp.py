"""What a child of the kernel zygote does to become a kernel: the IPKernelApp the zygote prebuilt before the fork
(its command line, profile and config files) and the IPython shell it built, finished in the child with the
child's own connection file, kernel and sockets, the shell made that kernel's; then it serves, and exits as
the kernel would."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn


def become_kernel(request: dict[str, Any], isolated: bool, prebuilt: list[str] | None) -> NoReturn:
    """The rest of a forked child's life: its environment, its IPKernelApp, the capture module, then serving
    until it exits."""
    code = 1
    try:
        env = {k: v for k, v in request["env"].items() if k != "JPY_PARENT_PID"}
        if isolated:  # as bubblewrap sets it for an exec'd kernel: its private /tmp
            env["HOME"] = "/tmp"
        os.environ.clear()
        os.environ.update(env)
        cwd = request.get("cwd") or ("/tmp" if isolated else None)
        if cwd:
            os.chdir(cwd)
        numpy_random = sys.modules.get("numpy.random")
        if numpy_random is not None:
            numpy_random.seed()  # the zygote's seed is every kernel's otherwise
        sys.argv = ["ipykernel_launcher", *request["argv"]]
        app = _kernel_app(request["argv"], prebuilt)
        capture = request.get("capture")
        if capture is not None:
            # The capture module, installed before the kernel serves anything: the service's install request
            # (an execute and its round trip) is not needed, and the first cell is tracked as it would be.
            from notebook_state.capture import install

            install(auto_dir=capture["auto_dir"], reply=bool(capture.get("reply")))
        app.start()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def prebuild_app(argv: list[str]) -> bool:
    """IPKernelApp as far as it goes without a kernel's connection file: its command line ``argv`` (all but
    ``-f``), crash handler, profile and config files (``BaseIPythonApplication.initialize``: ~10 of the ~35 ms
    of CPU each forked kernel spent initialising). Each kernel sets its connection file and does the rest (its
    sockets, shell, kernel) after the fork. Nothing here starts a thread or opens a socket."""
    from ipykernel.kernelapp import IPKernelApp
    from IPython.core.application import BaseIPythonApplication

    try:
        BaseIPythonApplication.initialize(IPKernelApp.instance(), argv)  # type: ignore[no-untyped-call]
    except (Exception, SystemExit):  # a bad config file: each kernel fails (or not) on its own, as exec'd
        IPKernelApp.clear_instance()
        return False
    return True


def connection_file(argv: list[str], prebuilt: list[str] | None) -> str | None:
    """The kernel's connection file when its ``argv`` is the prebuilt one plus ``-f FILE``, else None."""
    if prebuilt is None or "-f" not in argv[:-1]:
        return None
    at = argv.index("-f")
    return argv[at + 1] if [*argv[:at], *argv[at + 2 :]] == prebuilt else None


def prebuild_shell() -> bool:
    """The kernels' IPython shell, built once in the zygote as IPythonKernel builds it (~10 of the ~30 ms of CPU a
    forked kernel spent initialising: traitlets, magics, prefilters, completer, display formatters, IPython's
    default extensions); each kernel adopts it (``_adopting``), so its pages are shared too. Only with IPython's
    history off, as the kernels' argv says: otherwise the shell starts a saving thread, and the zygote must stay
    single-threaded."""
    from ipykernel.compiler import XCachingCompiler
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelapp import IPKernelApp
    from ipykernel.zmqshell import ZMQInteractiveShell
    from traitlets import Bool

    app = IPKernelApp.instance()
    history = app.config.HistoryManager.get("enabled", True)  # from the command line: a string still
    if app.kernel_class is not IPythonKernel or Bool().from_string(str(history)):
        return False
    threads = threading.active_count()
    try:
        shell = ZMQInteractiveShell.instance(
            parent=app, profile_dir=app.profile_dir, user_module=None, user_ns=app.user_ns, kernel=None,
            compiler_class=XCachingCompiler,
        )  # fmt: skip
        if shell.display_formatter is not None:  # its formatters are made on first use: every kernel's first result
            shell.display_formatter.formatters  # noqa: B018
        # IPython's default extensions (storemagic: its magics registered, ~1.4 ms of a kernel's CPU): each
        # kernel's init_extensions finds them loaded. Not when storemagic would read the profile's store at load
        # (autorestore): each kernel's profile is its own.
        extensions = shell.extension_manager
        if extensions is not None and not Bool().from_string(str(app.config.StoreMagics.get("autorestore", False))):
            for name in app.default_extensions:
                extensions.load_extension(name)
    except Exception:  # each kernel builds its own, as without a zygote
        ZMQInteractiveShell.clear_instance()
        return False
    if threading.active_count() != threads:
        raise RuntimeError("building the IPython shell started a thread: the zygote cannot fork safely")
    return True


@contextlib.contextmanager
def _adopting(argv_fits: bool) -> Iterator[None]:
    """While IPKernelApp initialises in a kernel: IPythonKernel's ``shell_class.instance(...)`` gets the shell the
    zygote built, made this kernel's, when it asks for what the zygote built; otherwise a shell of its own."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config.configurable import SingletonConfigurable

    shell = InteractiveShell._instance
    if shell is None:
        yield
        return
    if not argv_fits:  # built for another command line
        type(shell).clear_instance()  # its own class's: a base class's leaves the subclass's singleton set
        yield
        return
    cls = type(shell)
    build = SingletonConfigurable.instance.__func__
    asked = False

    def instance(klass: type[Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal asked
        if asked or kwargs.get("kernel") is None:  # not the kernel's own request: the singleton as it is
            return build(klass, *args, **kwargs)
        asked = True
        fits = (
            klass is cls and not args and kwargs.get("profile_dir") is shell.profile_dir
            and kwargs.get("user_module") is None and kwargs.get("user_ns") is None
            and kwargs.get("compiler_class") is type(shell.compile)
        )  # fmt: skip
        if not fits:
            cls.clear_instance()
            return build(klass, *args, **kwargs)
        shell.parent = kwargs.get("parent")
        shell.kernel = kwargs.get("kernel")
        shell.init_environment()  # its variables were set in the zygote's environment, not this kernel's
        shell.history_manager.dir_hist[:] = [os.getcwd()]  # _dh: where this kernel starts
        return shell

    cls.instance = classmethod(instance)
    try:
        yield
    finally:
        del cls.instance  # SingletonConfigurable's own again


def _kernel_app(argv: list[str], prebuilt: list[str] | None) -> Any:
    """The kernel's IPKernelApp, initialised: from where the zygote left it when ``argv`` is what it parsed."""
    from ipykernel.kernelapp import IPKernelApp
    from IPython.core.application import BaseIPythonApplication

    path = connection_file(argv, prebuilt)
    if path is None:
        IPKernelApp.clear_instance()
        app = IPKernelApp.instance()
        with _adopting(argv_fits=False):
            app.initialize()  # type: ignore[no-untyped-call]
        return app
    app = IPKernelApp.instance()
    app.connection_file = path
    if app.profile_dir is not None:  # made in the zygote's /tmp, not in this kernel's
        os.makedirs(app.profile_dir.location, exist_ok=True)
        app.profile_dir.check_dirs()  # type: ignore[no-untyped-call]
    done = BaseIPythonApplication.initialize
    BaseIPythonApplication.initialize = lambda self, argv=None: None  # type: ignore[method-assign]
    try:
        with _adopting(argv_fits=True):
            app.initialize()  # type: ignore[no-untyped-call]  # the rest of it (ipykernel's own part)
    finally:
        BaseIPythonApplication.initialize = done  # type: ignore[method-assign]
    return app
