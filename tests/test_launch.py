"""The launcher behind ``xception-demo ui`` / ``up`` (``xception_demo.launch``): the commands it runs."""

from xception_demo import launch


def test_launch_commands():
    command = launch.streamlit_command(8599, "0.0.0.0")
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("ui/app.py")
    assert launch.APP_PATH.is_file()
    flags = dict(zip(command[5::2], command[6::2]))
    assert flags["--server.port"] == "8599" and flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false" and flags["--server.address"] == "0.0.0.0"
    assert launch._url("0.0.0.0", 8501) == "http://127.0.0.1:8501"
    assert launch._url("::", 8000) == "http://[::1]:8000"
    env = launch._child_env(XCEPTION_UI_API_URL="http://127.0.0.1:1")
    assert env["PYTHONPATH"].split(":")[0] == str(launch.PACKAGE_ROOT)
    assert (launch.PACKAGE_ROOT / "ui" / "app.py").is_file() and (launch.PACKAGE_ROOT / "api" / "main.py").is_file()
    assert env["XCEPTION_UI_API_URL"] == "http://127.0.0.1:1"
