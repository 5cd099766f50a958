"""Meter links for the unix port: a tty (USB RS-485 adapter or a pseudo-terminal) and
RTU frames over TCP. Interface: firmware/hal/uart.py. Runs under MicroPython and CPython.

The tty is opened unbuffered and waited on with select.poll(), so read() never blocks, and
it is put in raw mode here (RTU bytes must cross unchanged) rather than trusting the other
side to have done it. The unix port's termios is incomplete; the facts this relies on
(checked on MicroPython v1.29 unix, Linux) are noted beside the code that uses them.
"""
import select

from firmware.hal.uart import Uart

# Linux termios values missing from MicroPython's termios module: it lacks B2400/B4800/
# B19200/B38400 and the PARENB/PARODD/CSTOPB flags (and the VMIN/VTIME indices); the unix
# port is only used on Linux here.
_LINUX_BAUD = {1200: 0o11, 2400: 0o13, 4800: 0o14, 9600: 0o15, 19200: 0o16, 38400: 0o17,
               57600: 0o10001, 115200: 0o10002}
_CSTOPB = 0o100
_CREAD = 0o200
_PARENB = 0o400
_PARODD = 0o1000
_CLOCAL = 0o4000
_VTIME = 5
_VMIN = 6
_EIO = 5
_EBADF = 9
_ECONNRESET = 104
# Raw mode where termios has no setraw() (CPython), Linux values: the flags tty.setraw() clears.
_RAW_IFLAG = 0o2 | 0o400 | 0o20 | 0o40 | 0o2000   # BRKINT ICRNL INPCK ISTRIP IXON
_RAW_OFLAG = 0o1                                  # OPOST
_CSIZE = 0o60
_CS8 = 0o60
_RAW_LFLAG = 0o10 | 0o2 | 0o100000 | 0o1          # ECHO ICANON IEXTEN ISIG
_TCSAFLUSH = 2


# The unix port's termios has setraw() (and tcgetattr, tcsetattr, a few B* constants);
# CPython's has no setraw, and the unix port has no `tty` module (so this module cannot
# import it): under CPython _setraw() clears the same flags as CPython 3.11's tty.setraw().
def _setraw(termios, fd):
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~_RAW_IFLAG
    attrs[1] &= ~_RAW_OFLAG
    attrs[2] = (attrs[2] & ~(_CSIZE | _PARENB)) | _CS8
    attrs[3] &= ~_RAW_LFLAG
    attrs[6][_VMIN] = 1
    attrs[6][_VTIME] = 0
    termios.tcsetattr(fd, _TCSAFLUSH, attrs)


# Raw mode: no echo, no CR/LF mapping, 8 bits, no flow control. For a pseudo-terminal the
# emulator also sets raw mode on the slave, and the settings are shared, so doing it twice
# is harmless. On a pseudo-terminal the line speed means nothing; on a USB adapter it is
# the meter's baud rate.
def _configure(fd, baudrate, parity, stopbits):
    try:
        import termios
    except ImportError:
        return
    if hasattr(termios, "setraw"):
        termios.setraw(fd)
    else:  # CPython
        _setraw(termios, fd)
    attrs = termios.tcgetattr(fd)
    cflag = attrs[2] & ~(_PARENB | _PARODD | _CSTOPB)
    cflag |= _CREAD | _CLOCAL
    if parity in ("E", "O"):
        cflag |= _PARENB
        if parity == "O":
            cflag |= _PARODD
    if stopbits == 2:
        cflag |= _CSTOPB
    attrs[2] = cflag
    # VMIN = VTIME = 0: read(2) returns at once with what is there. MicroPython's
    # FileIO.read(n) loops until n bytes or a zero-length read, so without this it would
    # block for the rest of n even after poll() said "readable".
    attrs[6][_VMIN] = 0
    attrs[6][_VTIME] = 0
    speed = getattr(termios, f"B{baudrate}", None) or _LINUX_BAUD.get(baudrate)
    if speed:
        attrs[4] = attrs[5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class TtyUart(Uart):
    """A tty opened by path; parity None/"E"/"O".

    A link that goes away (USB adapter unplugged, emulator restarted) is closed and
    reopened by path at the next use, so the meter comes back without a reboot; until
    then every call raises OSError, which the master counts as a link error.
    """

    def __init__(self, path, baudrate=9600, parity=None, stopbits=1):
        self.path = path
        self.baudrate = baudrate
        self._line = (parity, stopbits)
        self._f = None
        self._poll = None
        self._closed = False
        self._open()  # a wrong path at start is a configuration error: raise it

    # open(path, "r+b") opens a tty unbuffered; select.poll() waits on the file object, and
    # read(n) after POLLIN returns what is there (one read(2)).
    def _open(self):
        f = open(self.path, "r+b", buffering=0)  # noqa: SIM115 - kept open
        try:
            _configure(f.fileno(), self.baudrate, self._line[0], self._line[1])
        except OSError:
            f.close()
            raise
        poll = select.poll()
        poll.register(f, select.POLLIN)
        self._f, self._poll = f, poll

    def _drop(self):
        f, poll = self._f, self._poll
        self._f = self._poll = None
        if f is not None:
            if poll is not None:
                poll.unregister(f)
            f.close()

    def _file(self):
        """The tty, reopened if the link was lost; OSError once closed or while still gone."""
        if self._closed:
            raise OSError(_EBADF, "tty closed")
        if self._f is None:
            self._open()
        f = self._f
        if f is None:
            raise OSError(_EIO, "tty not open")
        return f

    def _lost(self, why):
        self._drop()
        raise OSError(_EIO, why)

    def write(self, data):
        f = self._file()
        view = memoryview(data)
        try:
            while len(view):
                n = f.write(view)
                if n is None:
                    n = 0
                view = view[n:]
        except OSError:
            self._lost("tty write failed")

    def _events(self, timeout_ms):
        self._file()
        poll = self._poll
        if poll is None:
            return 0
        ev = poll.poll(timeout_ms)
        return ev[0][1] if ev else 0

    def read(self, n):
        flags = self._events(0)
        if flags & select.POLLIN:
            try:
                data = self._file().read(n)
            except OSError:
                data = None
            if not data:
                self._lost("tty closed")
            return data
        if flags & (select.POLLHUP | select.POLLERR):
            self._lost("tty hung up")
        return b""

    def wait_readable(self, timeout_ms):
        return bool(self._events(max(0, int(timeout_ms))))

    def close(self):
        self._closed = True
        self._drop()


class TcpUart(Uart):
    """RTU frames (with CRC, no MBAP header) over TCP, as RTU-over-TCP gateways carry them.

    Connects on first use and again after the peer closed; a connect failure raises OSError
    from write(), which the master counts as a link error. `baudrate` is the line speed behind
    the gateway (only used for the inter-frame silence).
    """

    def __init__(self, host, port, baudrate=9600, connect_timeout_s=2):
        self.host = host
        self.port = port
        self.baudrate = baudrate
        self.connect_timeout_s = connect_timeout_s
        self._sock = None
        self._poll = None

    def _connect(self):
        import socket

        addr = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout_s)
            sock.connect(addr)
            sock.settimeout(None)
        except OSError:
            sock.close()
            raise
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        self._sock = sock
        self._poll = poll
        return sock

    def write(self, data):
        sock = self._sock
        if sock is None:
            sock = self._connect()
        try:
            sock.sendall(data)
        except OSError:
            self.close()
            raise

    def read(self, n):
        sock, poll = self._sock, self._poll
        if sock is None or poll is None:
            return b""
        ev = poll.poll(0)
        if not ev:
            return b""
        if ev[0][1] & (select.POLLHUP | select.POLLERR) and not ev[0][1] & select.POLLIN:
            self.close()
            raise OSError(_ECONNRESET, "connection lost")
        try:
            data = sock.recv(n)
        except OSError:
            self.close()
            raise
        if not data:
            self.close()
            raise OSError(_ECONNRESET, "peer closed the connection")
        return data

    def wait_readable(self, timeout_ms):
        poll = self._poll
        if self._sock is None or poll is None:
            return False
        return bool(poll.poll(max(0, int(timeout_ms))))

    def close(self):
        sock, poll = self._sock, self._poll
        if sock is not None:
            if poll is not None:
                poll.unregister(sock)
            sock.close()
            self._sock = None
            self._poll = None
