"""Placeholder: being written."""
import streamlit as st

st.title("attack_lab")
