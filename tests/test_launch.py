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


def test_relative_path_settings_reach_the_children_absolute(monkeypatch, tmp_path):
    """The children run in the package's folder: ``XCEPTION_HOME=models xception-demo up`` must
    still mean ./models where the user typed it, not a folder inside the installed package."""
    from pathlib import Path

    from api.settings import Settings

    paths = {f"XCEPTION_{name.upper()}" for name, field in Settings.model_fields.items() if Path in getattr(field.annotation, "__args__", (field.annotation,))}
    assert set(launch.PATH_SETTINGS) == paths
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XCEPTION_HOME", "models")
    monkeypatch.setenv("XCEPTION_SPECTRUM_DIR", "/abs/run")
    monkeypatch.setenv("XCEPTION_ATLAS_DATA", "")
    env = launch._child_env()
    assert env["XCEPTION_HOME"] == str(tmp_path / "models")
    assert env["XCEPTION_SPECTRUM_DIR"] == "/abs/run" and env["XCEPTION_ATLAS_DATA"] == ""
